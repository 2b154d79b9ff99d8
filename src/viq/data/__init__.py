"""viq.data"""
