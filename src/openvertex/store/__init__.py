"""What outlives a request and is shared by replicas: an embedded SQLite database by default."""
