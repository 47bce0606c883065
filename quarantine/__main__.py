from quarantine.cli import main

main()
