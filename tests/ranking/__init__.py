"""src/ranking: win probabilities, pair selection, PairRM."""
