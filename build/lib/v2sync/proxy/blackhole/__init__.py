"""blackhole: the outbound that drops everything, optionally answering HTTP 403 first."""
