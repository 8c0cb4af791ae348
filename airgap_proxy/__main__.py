"""``python -m airgap_proxy``."""

from airgap_proxy.cli import main

raise SystemExit(main())
