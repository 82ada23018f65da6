from services.registry.app import main

main()
