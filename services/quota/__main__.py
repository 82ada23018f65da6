from services.quota.app import main

main()
