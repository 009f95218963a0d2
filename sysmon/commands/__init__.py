"""One module per command of the README's table; they wire the layers below."""
