from laggrow.cli import main

main()
