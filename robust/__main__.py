from robust.cli import main

main(prog_name="robust")
