from saecircuits.app.cli import main

main()
