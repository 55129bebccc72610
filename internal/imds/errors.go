package imds

import (
	"fmt"
	"net/http"
)

// errorPage renders EC2's small XHTML error page for a status.
func errorPage(status int) body {
	title := fmt.Sprintf("%d - %s", status, http.StatusText(status))
	return newBody(`<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
	"http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>` + title + `</title>
 </head>
 <body>
  <h1>` + title + `</h1>
 </body>
</html>`)
}

// errorPages holds the rendered page of every status the handler refuses
// with, so that a refusal costs no more than an answer.
var errorPages = func() map[int]body {
	m := map[int]body{}
	for _, s := range []int{
		http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden,
		http.StatusNotFound, http.StatusMethodNotAllowed, http.StatusTooManyRequests,
		http.StatusServiceUnavailable,
	} {
		m[s] = errorPage(s)
	}
	return m
}()
