"""txguard: transaction fraud detection on AWS Lambda and PostgreSQL."""

__version__ = "0.1.0"
