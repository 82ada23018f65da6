from services.metering.app import main

main()
