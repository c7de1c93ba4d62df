# Dynamic speaker mix for `inference_main.py -usm`.
#
# spk_mix_map = {speaker: [[t_start, t_end, v_start, v_end], ...], ...}
#
# - speaker: the integer id from config.json's "spk" map (a speaker name also works here);
#   every speaker of the config needs an entry.
# - t_start, t_end: fractions 0..1 of the whole output; one speaker's segments must be contiguous,
#   the first starting at 0 and the last ending at 1.
# - v_start, v_end: weight (>= 0) at the segment's start and end, ramped linearly in between.
#   Per frame the weights are normalised to sum to 1.
# - a speaker you do not want: [[0.0, 1.0, 0.0, 0.0]]
#
# This file is read as a literal (it is never executed): keep it to plain numbers, lists and dicts.

spk_mix_map = {
    0: [[0.0, 0.5, 1.0, 0.5], [0.5, 1.0, 0.5, 1.0]],
    1: [[0.0, 0.35, 1.0, 0.5], [0.35, 0.75, 0.75, 1.0], [0.75, 1.0, 0.45, 1.0]],
    2: [[0.0, 0.35, 1.0, 0.5], [0.35, 0.75, 0.75, 1.0], [0.75, 1.0, 0.45, 1.0]],
    3: [[0.0, 0.5, 1.0, 0.5], [0.5, 1.0, 0.5, 1.0]],
    4: [[0.0, 1.0, 0.0, 0.0]],
}
