"""The model store: files under ``$BASTION_HOME/models/<name>/`` with their manifest."""
