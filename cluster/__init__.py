"""k-means clustering of speech units. Filled by the cluster/retrieval issue; nothing here yet."""
