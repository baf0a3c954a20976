"""The only home of aiokafka: the cluster port, its aiokafka adapter, protocol structs, auth."""
