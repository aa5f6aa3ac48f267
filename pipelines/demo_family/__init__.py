"""The offline demo family: tiny random-weight FLUX models in the hub repositories' layouts."""
