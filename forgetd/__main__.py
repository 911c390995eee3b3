from forgetd.cli.main import main

main()
