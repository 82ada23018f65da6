from switchyard_gateway.services.gateway.app import main

main()
