"""Integration configuration: YAML loading, the envelope model and validation."""

from zetl.config.load import Integration, collect_files, load_integration, load_integrations, parse_integration
from zetl.config.model import IntegrationConfig
from zetl.config.yamlfile import load_yaml

__all__ = ["Integration", "IntegrationConfig", "collect_files", "load_integration", "load_integrations", "load_yaml", "parse_integration"]
