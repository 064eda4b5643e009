"""The Ray programs users submit (segment, train, evaluate) and the helpers they share."""
