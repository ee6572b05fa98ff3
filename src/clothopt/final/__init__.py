"""The finalized study: retrain, export, score; and what it stores."""
