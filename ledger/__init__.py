"""smsledger's durable record: scheduled orders, their states and an append-only history."""
