"""Pure: this tick's records and the last state in, rows and the next state out."""
