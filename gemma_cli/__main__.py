from gemma_cli.cli.app import main

main()
