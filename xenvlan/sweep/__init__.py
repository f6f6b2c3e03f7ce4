"""Finding the cliff: ping argv/parse, the prober, the search, the verdict."""
