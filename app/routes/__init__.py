"""HTTP routes: operations (health, readiness, metrics), v1 and the Open Inference Protocol v2."""
