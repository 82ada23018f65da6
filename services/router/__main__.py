from switchyard_gateway.services.router.app import main

main()
