"""What the data holder ships: the de-identified, k-anonymous release."""
