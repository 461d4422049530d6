import sys

from budgetd_client.cli.main import main

sys.exit(main())
