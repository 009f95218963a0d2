"""Where rows go: the daily CSV files and the state beside them."""
