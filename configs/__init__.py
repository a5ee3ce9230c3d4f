"""The packaged pipeline configs (YAML) and DeepSpeed JSON files; a package so that installs ship them."""
