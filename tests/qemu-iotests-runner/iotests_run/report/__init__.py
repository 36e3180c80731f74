"""Reporters: functions of the result list. Nothing here starts a process."""
