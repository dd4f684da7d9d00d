from saecircuits.cli import main

main()
