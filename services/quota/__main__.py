from switchyard_gateway.services.quota.app import main

main()
