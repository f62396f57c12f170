"""The request pipeline between the HTTP edge and the backends."""
