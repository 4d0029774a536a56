"""Video: NoScope-style specialized-model frame filters over camera topics (difference detector first)."""
