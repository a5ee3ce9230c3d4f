"""Where evaluation data came from, as its folder says: the marker the synthetic world writes in every
benchmark folder it generates. Scores on such a folder are not comparable with the paper's, so results there
carry no paper numbers (and say `data: synthetic`)."""

SYNTHETIC_MARKER = "SYNTHETIC.txt"
