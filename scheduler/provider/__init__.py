"""The iletiMerkezi provider: the client smsledger speaks it with, its errors and wire format.

Nothing here imports the ledger. The sandbox (`scheduler.provider.sandbox`), a local stand-in for
the provider, is imported only when asked for.
"""

from __future__ import annotations

from scheduler.provider.client import (
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_TIMEOUT_SECONDS,
    MAX_ANSWER_BYTES,
    PROVIDER_ZONE,
    ApiSettings,
    Balance,
    CancelAnswer,
    IletiMerkeziClient,
    ListedOrder,
    Report,
    ReportsPage,
    ReportStatus,
    SendResult,
    format_send_datetime,
)
from scheduler.provider.errors import (
    CODE_MEANINGS,
    ProviderAuthError,
    ProviderError,
    ProviderStatusError,
    ProviderTransientError,
    SendTimeError,
)

__all__ = [
    "CODE_MEANINGS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_SECONDS",
    "MAX_ANSWER_BYTES",
    "PROVIDER_ZONE",
    "ApiSettings",
    "Balance",
    "CancelAnswer",
    "IletiMerkeziClient",
    "ListedOrder",
    "ProviderAuthError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTransientError",
    "Report",
    "ReportStatus",
    "ReportsPage",
    "SendResult",
    "SendTimeError",
    "format_send_datetime",
]
