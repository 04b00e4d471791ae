from launcher.frontend.cli import main

main()
