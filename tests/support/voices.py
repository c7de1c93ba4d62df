"""The synthetic singing generator lives in the product (the quick-start uses it too); tests import it here."""
from modules.synthetic_voices import *  # noqa: F401,F403
from modules.synthetic_voices import (  # noqa: F401
                                      SPEAKERS,
                                      VOWELS,
                                      Note,
                                      Speaker,
                                      SyntheticVoice,
                                      midi_to_hz,
                                      random_melody,
                                      synth_notes,
                                      synth_singing,
                                      write_dataset,
)
