from dcgan.cli import app

app(prog_name="dcgan")
