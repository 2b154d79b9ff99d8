"""viq.quant"""
