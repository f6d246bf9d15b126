from imgrag.cli.commands import main

main()
