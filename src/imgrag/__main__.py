from imgrag.cli import main

main()
