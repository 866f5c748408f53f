from signgd_jax.commands.train.cli import entry

if __name__ == "__main__":
    entry(prog="python -m train")
