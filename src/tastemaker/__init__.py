"""tastemaker: a real-time personalization engine.

Events in, features within seconds, recommendations in milliseconds; one process on embedded
storage, or a fleet on Redis and Kafka with the same code.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
