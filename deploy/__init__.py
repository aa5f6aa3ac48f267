"""Ray Serve deployment of the playground: one worker per GPU behind the one app (deploy/serve_app.py)."""
