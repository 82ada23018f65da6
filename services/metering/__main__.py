from switchyard_gateway.services.metering.app import main

main()
