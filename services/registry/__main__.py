from switchyard_gateway.services.registry.app import main

main()
