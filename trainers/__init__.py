"""Data, tasks, models, source training and transfer for robverify."""
