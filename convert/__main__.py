from signgd_jax.commands.evaluate.cli import entry

if __name__ == "__main__":
    entry(prog="python -m convert")
